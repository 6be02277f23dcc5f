"""Operator commands: the dead-letter workflow and the ledger/queue audit."""
