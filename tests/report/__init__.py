"""Tests of vit_ablate.report (a package so that its helper modules import relatively)."""
