"""Planning: a Build turned into the steps that build it (pure).

:mod:`.plan` is the serialisable plan, :mod:`.buildah` renders a Docker-strategy Build into
one, :mod:`.dockerfile` holds the Dockerfile text edits the plan asks for, :mod:`.needs`
says which Secrets and ConfigMaps a Build reads and what for. Nothing here runs
a process or touches a file; :mod:`triggerd.runner` does that.
"""
