"""The domain: holds, stock, locks, expiry and the ledger. Nothing here touches request, session or g."""
