"""vrec's dev and ops tooling: the CLI, the dev broker, the replay harness, demo, benches and
offline evaluation. A worker process never imports this package (the runtime is ``streams``)."""
