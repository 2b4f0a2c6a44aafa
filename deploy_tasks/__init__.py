"""deploy_tasks: deploy a many-component product onto Puppet-managed Windows nodes."""

__version__ = "0.1.0"
