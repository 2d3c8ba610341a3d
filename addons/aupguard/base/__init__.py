"""The ground floor: what every other subpackage stands on (paths, errors, URL normalisation, the shared vocabulary)."""
