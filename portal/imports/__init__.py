"""Bulk upload of individuals and households: files, staged rows, fixes, imports, history."""
from flask import Blueprint

bp = Blueprint("imports", __name__, url_prefix="/imports")
