"""The rules of the service: entry points (api/, cli/, workers/) call these; these call db/."""
