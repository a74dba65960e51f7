"""Shared vocabulary of every layer: enums, DICOM date/time helpers, DIMSE status codes, the one
fsync'd file write, the local coding scheme and the base error. Imports nothing else of msfollowup."""
