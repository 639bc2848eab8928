"""The composition layer, above the roles: the ``tinyfed`` command and what runs several roles in one process.

``cli`` (the umbrella command, which finds each role's commands through
entry points), ``extras`` (which extras are installed), ``demo`` and
``bench`` (their commands), ``simulation`` (a broker, the gateway and device
agents in one process). No role imports this package.
"""
