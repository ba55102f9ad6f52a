"""Tests of vit_ablate.sweep (a package so that its helper modules import relatively)."""
