"""Reports of one checked study version: the DICOM SR (sr), the JSON document as a pydantic model
with its generated JSON Schema (model), the HTML page from a Jinja2 template (html), and the files
and `reports` table that tie them to a study version (files)."""
