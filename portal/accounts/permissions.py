"""Every permission the portal knows, named in code, and the roles created on first run.

Roles are rows an admin edits; these are only their starting permission sets.
"""
from __future__ import annotations

PERMISSIONS: dict[str, str] = {
    "location.view": "See the locations tree",
    "location.manage": "Create, edit and import locations",
    "user.manage": "Manage users, roles and their locations",
    "audit.view": "Browse the audit log",
    "job.view": "Watch background jobs",
    "individual.view": "Search and open individuals",
    "individual.edit": "Enrol and edit individuals",
    "individual.delete": "Delete and restore individuals",
    "individual.view_pii": "See national IDs and phone numbers unmasked",
    "individual.export": "Export individuals to CSV and XLSX",
    "group.view": "Search and open groups",
    "group.edit": "Create groups and manage members",
    "customfield.manage": "Define custom fields and member roles",
    "upload.view": "See upload history",
    "upload.create": "Upload, fix and import files",
    "program.view": "See programs and their beneficiaries",
    "program.manage": "Create and edit programs, institutions and schemes",
    "beneficiary.enrol": "Enrol beneficiaries into programs",
    "beneficiary.status": "Change beneficiary status",
    "payroll.approve": "Approve payrolls",
}

_VIEW = ["location.view", "individual.view", "group.view", "program.view", "upload.view"]

DEFAULT_ROLES: dict[str, tuple[str, list[str]]] = {
    "admin": ("Administrator", list(PERMISSIONS)),
    "program_manager": ("Program manager", _VIEW + [
        "job.view", "individual.edit", "individual.delete", "individual.view_pii",
        "individual.export", "group.edit", "upload.create", "program.manage",
        "beneficiary.enrol", "beneficiary.status", "payroll.approve", "audit.view",
    ]),
    "field_officer": ("Field officer", _VIEW + [
        "job.view", "individual.edit", "group.edit", "upload.create",
    ]),
    "viewer": ("Viewer (read only)", list(_VIEW)),
}
