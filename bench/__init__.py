"""vivace's benchmarks, one suite: `python -m bench` lists them, `python -m bench NAME --help` explains one."""
