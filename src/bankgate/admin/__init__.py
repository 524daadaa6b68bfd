"""Administrative use cases, shared by every entrance (the command line today, an admin API and a console next).

An entrance parses input, calls one method here and renders the result; the method validates (raising errors whose
message says what to do), makes the change and writes its own audit event under the acting principal (`Actor`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bankgate.admin._base import SYSTEM, Actor, AdminError, ConflictError, NotFoundError
from bankgate.admin.admins import AdminAdmin
from bankgate.admin.audit import AuditQueries
from bankgate.admin.certs import CertificateAdmin
from bankgate.admin.clients import ClientAdmin
from bankgate.admin.ips import AllowListAdmin, AllowListing, Subject
from bankgate.admin.keys import KeyAdmin
from bankgate.admin.setup import SetupAdmin
from bankgate.admin.users import UserAdmin
from bankgate.store.paging import Page

if TYPE_CHECKING:
    from bankgate.services import Services

__all__ = ["SYSTEM", "Actor", "Admin", "AdminError", "AllowListing", "ConflictError", "NotFoundError", "Page",
           "Subject"]


class Admin:
    """Every use case, by subject: `services.admin.clients.create(actor, ...)`."""

    def __init__(self, services: Services) -> None:
        self.setup = SetupAdmin(services)
        self.clients = ClientAdmin(services)
        self.users = UserAdmin(services)
        self.certs = CertificateAdmin(services)
        self.ips = AllowListAdmin(services)
        self.keys = KeyAdmin(services)
        self.audit = AuditQueries(services)
        self.admins = AdminAdmin(services)
