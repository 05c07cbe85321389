"""The science of one trial: data, tasks, multi-task models, training and attacks.

Nothing in here imports Ray or the orchestrator.
"""
