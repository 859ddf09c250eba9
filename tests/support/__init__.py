"""What the server, reliability, deploy and integration tests (and the benchmarks) share: a free
loopback port (``net``), polling for a condition (``waiting``), Debian's mosquitto (``mosquitto``)
and MQTT subscribers as Home Assistant would be (``mqtt``).

Nothing here imports ``inference_server``: the integration's tests run in another environment,
without the server package, and use ``net`` and ``mosquitto`` too."""
