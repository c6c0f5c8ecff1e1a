"""Data: read files, normalise records, render templates, tokenize with label masks, collate."""
