"""Builders: one module per dataset."""
