"""The keeper: a process apart from the agent that undoes the agent's freeze when the agent dies."""
