"""msfollowup: DICOM companion service for MRI follow-up of multiple sclerosis."""

__version__ = "0.1.0"
