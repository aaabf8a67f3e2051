"""Every table of every service, for migrations (each service owns its prefix)."""

from libs.storage import Base
from services.arbitration import tables as arbitration_tables
from services.context import tables as context_tables
from services.identity import tables as identity_tables
from services.scoring import tables as scoring_tables

metadata = Base.metadata
OWNED_TABLES = {
    "identity": identity_tables,
    "context": context_tables,
    "scoring": scoring_tables,
    "arbitration": arbitration_tables,
}
