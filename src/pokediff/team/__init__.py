"""Outgrowing one machine: a team's MLflow and Prefect servers, DVC and git remotes (docs/team.md).

    settings   a machine's team settings: environment, then team.env; checks that name the setting
    remotes    the DVC remote and git remote as a checkout uses them (pull inputs, push results)
    stack      the team's servers on one machine (PostgreSQL, MLflow, Prefect): make team-up / team-down
    python -m pokediff.team ...   the command line for all three
"""
