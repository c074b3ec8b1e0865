"""programs: institutions, schemes, programs, beneficiaries, status changes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 02:40:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('institution',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=160), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.CheckConstraint("kind IN ('ministry', 'agency', 'partner', 'other')", name=op.f('ck_institution_kind')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_institution')),
    sa.UniqueConstraint('code', name=op.f('uq_institution_code'))
    )
    op.create_table('scheme',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=160), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_scheme')),
    sa.UniqueConstraint('code', name=op.f('uq_scheme_code'))
    )
    op.create_table('program',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=160), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('beneficiary_kind', sa.String(length=10), nullable=False),
    sa.Column('date_from', sa.Date(), nullable=True),
    sa.Column('date_to', sa.Date(), nullable=True),
    sa.Column('max_beneficiaries', sa.Integer(), nullable=True),
    sa.Column('institution_id', sa.Integer(), nullable=True),
    sa.Column('scheme_id', sa.Integer(), nullable=True),
    sa.Column('amount', sa.Numeric(precision=12, scale=2), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('created_at', sa.DateTime(), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.Column('closed_at', sa.DateTime(), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.CheckConstraint("beneficiary_kind IN ('individual', 'group')", name=op.f('ck_program_beneficiary_kind')),
    sa.CheckConstraint("status IN ('draft', 'active', 'closed')", name=op.f('ck_program_status')),
    sa.CheckConstraint('max_beneficiaries IS NULL OR max_beneficiaries >= 0', name=op.f('ck_program_max_beneficiaries')),
    sa.CheckConstraint('date_to IS NULL OR date_from IS NULL OR date_to >= date_from', name=op.f('ck_program_period')),
    sa.ForeignKeyConstraint(['institution_id'], ['institution.id'], name=op.f('fk_program_institution_id_institution'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['scheme_id'], ['scheme.id'], name=op.f('fk_program_scheme_id_scheme'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_program')),
    sa.UniqueConstraint('code', name=op.f('uq_program_code'))
    )
    with op.batch_alter_table('program', schema=None) as batch_op:
        batch_op.create_index('ix_program_institution_id', ['institution_id'], unique=False)
        batch_op.create_index('ix_program_scheme_id', ['scheme_id'], unique=False)

    op.create_table('beneficiary',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('program_id', sa.Integer(), nullable=False),
    sa.Column('individual_id', sa.Integer(), nullable=True),
    sa.Column('group_id', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('custom', sa.JSON(), nullable=False),
    sa.Column('enrolled_at', sa.DateTime(), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.CheckConstraint('(individual_id IS NULL) <> (group_id IS NULL)', name=op.f('ck_beneficiary_one_subject')),
    sa.CheckConstraint("status IN ('potential', 'active', 'suspended', 'graduated')", name=op.f('ck_beneficiary_status')),
    sa.ForeignKeyConstraint(['program_id'], ['program.id'], name=op.f('fk_beneficiary_program_id_program'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['individual_id'], ['individual.id'], name=op.f('fk_beneficiary_individual_id_individual'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['group_id'], ['group.id'], name=op.f('fk_beneficiary_group_id_group'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_beneficiary'))
    )
    with op.batch_alter_table('beneficiary', schema=None) as batch_op:
        batch_op.create_index('ix_beneficiary_program_id_status', ['program_id', 'status'], unique=False)
        batch_op.create_index('uq_beneficiary_individual_program', ['individual_id', 'program_id'], unique=True, sqlite_where=sa.text('individual_id IS NOT NULL'), postgresql_where=sa.text('individual_id IS NOT NULL'))
        batch_op.create_index('uq_beneficiary_group_program', ['group_id', 'program_id'], unique=True, sqlite_where=sa.text('group_id IS NOT NULL'), postgresql_where=sa.text('group_id IS NOT NULL'))

    op.create_table('beneficiary_status_change',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('beneficiary_id', sa.Integer(), nullable=False),
    sa.Column('from_status', sa.String(length=10), nullable=True),
    sa.Column('to_status', sa.String(length=10), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('effective_date', sa.Date(), nullable=False),
    sa.Column('actor_id', sa.Integer(), nullable=True),
    sa.Column('at', sa.DateTime(), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.ForeignKeyConstraint(['beneficiary_id'], ['beneficiary.id'], name=op.f('fk_beneficiary_status_change_beneficiary_id_beneficiary'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['actor_id'], ['user.id'], name=op.f('fk_beneficiary_status_change_actor_id_user'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_beneficiary_status_change'))
    )
    with op.batch_alter_table('beneficiary_status_change', schema=None) as batch_op:
        batch_op.create_index('ix_beneficiary_status_change_beneficiary_id', ['beneficiary_id'], unique=False)

    # A program's own extra beneficiary fields: custom_field.program_id -> program.id.
    with op.batch_alter_table('custom_field', schema=None) as batch_op:
        batch_op.create_foreign_key(op.f('fk_custom_field_program_id_program'), 'program',
                                    ['program_id'], ['id'], ondelete='CASCADE')


def downgrade():
    with op.batch_alter_table('custom_field', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('fk_custom_field_program_id_program'), type_='foreignkey')
    with op.batch_alter_table('beneficiary_status_change', schema=None) as batch_op:
        batch_op.drop_index('ix_beneficiary_status_change_beneficiary_id')
    op.drop_table('beneficiary_status_change')
    with op.batch_alter_table('beneficiary', schema=None) as batch_op:
        batch_op.drop_index('uq_beneficiary_group_program')
        batch_op.drop_index('uq_beneficiary_individual_program')
        batch_op.drop_index('ix_beneficiary_program_id_status')
    op.drop_table('beneficiary')
    with op.batch_alter_table('program', schema=None) as batch_op:
        batch_op.drop_index('ix_program_scheme_id')
        batch_op.drop_index('ix_program_institution_id')
    op.drop_table('program')
    op.drop_table('scheme')
    op.drop_table('institution')
