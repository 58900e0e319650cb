"""Tests of the benchmark scripts (bench/)."""
