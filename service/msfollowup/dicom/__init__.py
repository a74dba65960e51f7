"""dicom: see docs/architecture.md."""
