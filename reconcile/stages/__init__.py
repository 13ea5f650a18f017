"""Cache stages: one `Stage` class per kind, one catalog of them.

A stage kind declares its spec (options, cache dir, the libraries and settings
in its signature, whether it starts a server, its exit code) and carries its
behaviour (`signature()`, `server_argv()`, `option_problem()`, `prime()`,
`verify()`). Everything outside this package asks the catalog; nothing
outside it branches on a stage's name.
"""
