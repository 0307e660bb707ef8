"""Maintenance of an archive: recovery, compaction, level-of-detail build, manifest, integrity, quarantine, publish."""
