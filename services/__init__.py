"""The service layer: the rules of With Sense photo search, written once.

Entry points (api/ over HTTP, cli/ on the command line, workers/ on Celery) speak their own protocol and call
these modules; these call db/ for SQL and core/ for settings, models, images and the content policy.

- intake: an upload or an ingested file becomes a pending photo, then a queued task
- indexing: a worker's batch: claim, decode, embed, moderate, store
- photos: who may see and manage a photo; edits, declarations, deletion, redrive, lists
- search: the query policy, the viewer's region, the active-model check, the nearest-neighbour queries
- moderation: review rules, classifier verdicts, moderator decisions, the audit trail
- models: which model serves search, coverage and switching
- queue: the producer side of Celery (tasks sent by name, so no entry point imports the worker)
- access: API keys; health: readiness of the dependencies
- rescreen: photos registered under older policy rules, read again with the rules in force
"""
