"""Tests of the number-masking service, its harness and its benchmark."""
