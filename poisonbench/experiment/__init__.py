"""One `defend` call: the typed spec, its checks, the scenarios, one run (resolve, train, record) and the
record store."""
