"""Caption language identification, without curate's keep/drop rule (curate.language): cleaning -> one backend
(langdetect_port: langdetect 1.0.9 vectorised and bit-exact, over langdetect_profiles, its n-gram profiles read
compactly; lingua_engine) -> detector (cache, 'und' rules)."""
