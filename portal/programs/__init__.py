"""Programs (benefit plans), institutions, schemes and their beneficiaries."""
from flask import Blueprint

bp = Blueprint("programs", __name__, url_prefix="/programs")
