"""casebroker: route administrative-procedure dossiers from any desk to the competent agency."""

__version__ = "0.1.0"
