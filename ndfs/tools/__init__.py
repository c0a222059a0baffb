"""What ndfs does with volumes besides serving them: convert (export/import), copy (between remotes), mesh,
batch, annotate (counting cells through RAMON) and the demo data. Each builds on ``ndfs.volume`` and the stores."""
