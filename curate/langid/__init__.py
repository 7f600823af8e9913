"""Caption language identification, without curate's keep/drop rule (curate.language): cleaning -> one backend
(langdetect_port: langdetect 1.0.9 vectorised and bit-exact; lingua_engine) -> detector (cache, 'und' rules)."""
