"""The registry: individuals, households and other groups, custom fields."""
from flask import Blueprint

bp = Blueprint("registry", __name__, url_prefix="/registry")
