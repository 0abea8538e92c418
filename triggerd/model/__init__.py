"""The API objects of build.openshift.io/v1: parsed, validated and serialised (pure)."""
