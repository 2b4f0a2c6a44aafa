"""The name rules live in ``deploy_tasks.names`` (below settings and the inventory); re-exported here."""

from ..names import *  # noqa: F401,F403
from ..names import ARTIFACT_NAME, COMPONENT_NAME, PARAMETER_NAME, PUPPET_CLASS, PUPPET_RESERVED, VERSION_TEXT  # noqa: F401
from ..names import address_problem, certname, is_hostname, is_ip_address  # noqa: F401
