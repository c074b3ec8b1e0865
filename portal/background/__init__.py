from flask import Blueprint

bp = Blueprint("background", __name__, url_prefix="/jobs")
