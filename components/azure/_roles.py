"""Azure role definitions serveform uses: built-in IDs and deterministic custom-role IDs."""

from __future__ import annotations

import uuid

# Built-in roles (their IDs are the same in every tenant).
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"

_NAMESPACE = uuid.UUID("6f1c2b9e-4d1a-4f0e-9a57-5e7276657366")


def custom_role_id(*parts: str) -> str:
    """A stable GUID for a custom role (Azure names role definitions by GUID)."""
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


def role_definition(subscription_id: str, role_id: str) -> str:
    return f"/subscriptions/{subscription_id}/providers/Microsoft.Authorization/roleDefinitions/{role_id}"
