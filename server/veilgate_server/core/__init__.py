"""Veilgate gateway."""
