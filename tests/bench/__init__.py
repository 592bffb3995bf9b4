"""`make bench`: the gateway measured against the floor it cannot beat, in one run.

The floor is the same echo server driven directly over its stdin/stdout pipes by the benchmark
process, doing the same client-side JSON work (encode one compact request, read one response,
decode it). Every measurement is written once against `rpc.Session` and run on each side, so
the ratio in the report is the cost of the gateway and of HTTP, nothing else. The gateway is
measured in both protocol eras on the same endpoint: handshake-era sessions, and in the echo and
throughput phases 2026-07-28 clients too (no session; one loopback source address, so one
anonymous principal and one child, per client), alternating with the others in the same rounds.
The last phase compares the gateway with itself instead: children in each isolation mode the
host allows (`uid`, `namespaces`, `uid+namespaces`) against children sharing its user (`none`,
the mode every other phase pins).

Modules: `rpc` (the session interface and the JSON work every side shares), `http` (a lean
HTTP/1.1 client), `gateway` (the gateway process and its clients of either era), `floor` (the
echo server over pipes), `workloads` (the measurements), `report` (the tables), `__main__` (the
order of the run).
"""
