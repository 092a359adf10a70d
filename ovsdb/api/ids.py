"""The southbound database API of IDS alerts."""


class IdsApi:
    """MbxSb's IDS alert methods."""

    def ids_alerts(self, mb=None):
        return [a for a in self.snapshot().ids_alerts
                if mb is None or a.middlebox == mb]
