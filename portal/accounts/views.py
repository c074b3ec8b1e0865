from flask import current_app, flash, redirect, request, session, url_for
from flask_login import current_user, login_user, logout_user
from sqlalchemy import select

from portal.accounts import bp, services
from portal.accounts.forms import LoginForm, PasswordForm, RoleForm, UserForm
from portal.accounts.models import Role, User
from portal.accounts.permissions import PERMISSIONS
from portal.errors import DomainError
from portal.extensions import db, login_manager
from portal.web import (AUTHENTICATED, PUBLIC, form_refusal, htmx_redirect, next_url, render, require,
                        scope)


@login_manager.user_loader
def _load_user(token: str):
    return services.load_user(db.session, token, session.get("sign_in"))


@bp.route("/login", methods=["GET", "POST"])
@require(PUBLIC)
def login():
    if current_user.is_authenticated:
        return redirect(url_for("home.index"))
    form = LoginForm()
    error = None
    if form.validate_on_submit():
        try:
            user = services.authenticate(
                db.session, form.email.data, form.password.data,
                max_failures=current_app.config["LOGIN_MAX_FAILURES"],
                lock_minutes=current_app.config["LOGIN_LOCK_MINUTES"])
        except DomainError as exc:
            db.session.commit()  # keep the failure count
            error = exc.message
        else:
            sign_in = services.start_sign_in(db.session, user)
            db.session.commit()
            # A new session: nothing from before sign-in (a CSRF secret someone planted or
            # read) carries over into the signed-in one.
            session.clear()
            session.permanent = True
            session["sign_in"] = sign_in
            login_user(user)
            return redirect(next_url("home.index"))
    status = 422 if error or form.errors else 200
    return render("accounts/login.html", form=form, error=error, status=status)


@bp.route("/logout", methods=["POST"])
@require(AUTHENTICATED)
def logout():
    services.end_sign_in(db.session, session.get("sign_in"))
    db.session.commit()
    logout_user()
    session.clear()  # the CSRF secret too: the next user of this browser starts afresh
    flash("You are signed out.", "info")
    return redirect(url_for("accounts.login"))


@bp.route("/account/password", methods=["GET", "POST"])
@require(AUTHENTICATED)
def change_password():
    form = PasswordForm()
    if form.validate_on_submit():
        try:
            services.change_password(db.session, current_user, form.current.data, form.password.data,
                                     max_failures=current_app.config["LOGIN_MAX_FAILURES"],
                                     lock_minutes=current_app.config["LOGIN_LOCK_MINUTES"])
        except DomainError as exc:
            db.session.commit()  # keep the count of wrong passwords
            if exc.field is None:  # locked: every session of the account has ended
                logout_user()
                flash(exc.message, "error")
                return redirect(url_for("accounts.login"))
            getattr(form, exc.field).errors.append(exc.message)
        else:
            db.session.commit()
            # The session version changed: renew this session only (the user, not the proxy).
            login_user(current_user._get_current_object())
            flash("Your password is changed. Other sessions are signed out.", "success")
            return redirect(url_for("home.index"))
    return render("accounts/password.html", form=form, status=422 if form.errors else 200)


# --- Admin: users --------------------------------------------------------------------------

@bp.route("/admin/users")
@require("user.manage")
def users():
    text = request.args.get("q", "")
    rows = services.list_users(db.session, scope=scope(), text=text)
    return render("accounts/users.html", partial="accounts/_user_rows.html", users=rows, q=text)


def _user_form(user: User | None) -> UserForm:
    form = UserForm(obj=user if request.method == "GET" else None)  # a POST is what was sent
    roles = list(db.session.scalars(select(Role).order_by(Role.label)))
    form.roles.choices = [(r.id, r.label) for r in roles]
    if request.method == "GET" and user is not None:
        form.roles.data = [r.id for r in user.roles]
        form.locations.data = ", ".join(loc.code for loc in user.locations)
    return form


def _visible_user_or_404(user_id: int) -> User:
    user = db.get_or_404(User, user_id)
    if not services.visible_user(user, scope()):
        from flask import abort

        abort(404)
    return user


@bp.route("/admin/users/new", methods=["GET", "POST"])
@require("user.manage")
def new_user():
    return _edit_user(None)


@bp.route("/admin/users/<int:user_id>", methods=["GET", "POST"])
@require("user.manage")
def edit_user(user_id: int):
    return _edit_user(_visible_user_or_404(user_id))


def _edit_user(user: User | None):
    form = _user_form(user)
    if form.validate_on_submit():
        roles = [db.session.get(Role, rid) for rid in dict.fromkeys(form.roles.data)]  # each once
        try:
            if user is None and not form.password.data:
                raise DomainError("A new user needs a password.", field="password")
            locations = services.resolve_locations(db.session, (form.locations.data or "").split(","), scope())
            saved = services.save_user(
                db.session, user, email=form.email.data, name=form.name.data,
                password=form.password.data or "", roles=roles, locations=locations,
                all_locations=form.all_locations.data, scope=scope(),
                actor_permissions=current_user.permissions, actor_id=current_user.id)
        except DomainError as exc:
            form_refusal(form, exc, "email")
        else:
            db.session.commit()
            flash(f"Saved {saved.name}.", "success")
            return redirect(url_for("accounts.users"))
    return render("accounts/user_form.html", form=form, user=user,
                  status=422 if form.errors else 200)


@bp.route("/admin/users/<int:user_id>/active", methods=["POST"])
@require("user.manage")
def set_user_active(user_id: int):
    user = _visible_user_or_404(user_id)
    try:
        services.set_active(user, request.form.get("active") == "1", actor=current_user)
    except DomainError as exc:
        flash(exc.message, "error")
    else:
        db.session.commit()
        flash(f"{user.name} is {'enabled' if user.active else 'disabled'}.", "success")
    return htmx_redirect(url_for("accounts.users"))


# --- Admin: roles --------------------------------------------------------------------------

@bp.route("/admin/roles")
@require("user.manage")
def roles():
    rows = list(db.session.scalars(select(Role).order_by(Role.label)))
    return render("accounts/roles.html", roles=rows, permissions=PERMISSIONS)


@bp.route("/admin/roles/<int:role_id>", methods=["GET", "POST"])
@require("user.manage")
def edit_role(role_id: int):
    role = db.get_or_404(Role, role_id)
    form = RoleForm()
    form.permissions.choices = [(p, f"{p}: {label}") for p, label in PERMISSIONS.items()]
    if request.method == "GET":
        form.permissions.data = sorted(role.permissions)
    if form.validate_on_submit():
        if not scope().everything:
            form.permissions.errors.append("Only a user who sees all locations may change roles.")
        else:
            try:
                services.set_role_permissions(role, form.permissions.data,
                                              actor_permissions=current_user.permissions)
            except DomainError as exc:
                form.permissions.errors.append(exc.message)
            else:
                db.session.commit()
                flash(f"Saved the role {role.label}.", "success")
                return redirect(url_for("accounts.roles"))
    return render("accounts/role_form.html", form=form, role=role, status=422 if form.errors else 200)
