"""Machine-readable opt-outs: robots.txt, TDMRep, response headers and image metadata checked per row (issue 16)."""
