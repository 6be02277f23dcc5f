"""Client SDK for desk and agency systems (kombu), and the demo simulators."""

from adapters.client import (
    AgencyClient,
    BrokerClient,
    DeskClient,
    Inbox,
    InboxRefused,
    MessageTooLarge,
    NotInTopology,
    PublishError,
    QueueMissing,
    Received,
    RetryLater,
)

__all__ = ["AgencyClient", "BrokerClient", "DeskClient", "Inbox", "InboxRefused",
           "MessageTooLarge", "NotInTopology", "PublishError", "QueueMissing", "Received",
           "RetryLater"]
