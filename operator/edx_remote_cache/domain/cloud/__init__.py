"""Cloud planning for the cache host, pure: (desired, observed) -> an ordered plan of frozen actions.

Recurring roles, in dependency order: `model` (the vocabulary), `normalize` (AWS answers -> model),
`desired` (the spec -> what AWS should report), `actions` (the plan and what carrying it out reported),
`diff` (the planner), `teardown` (what a delete removes). The boto3 adapter that carries plans out is
`edx_remote_cache.adapters.aws`. Import the role modules (`from edx_remote_cache.domain.cloud import diff`);
this package re-exports nothing, so a name always says which room it lives in.
"""
