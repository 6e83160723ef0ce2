"""R16: an opt-out written in any form R3 reads blocks that number in every kind of send,
and an entry smsops could never send to is refused, never stored."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from domain.test_phones import mobile_forms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import add_users, e164, mobile

from smsops.errors import InputError, RuleError
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services import people
from smsops.services.context import Context
from smsops.settings import Settings


@pytest.fixture
def sctx(sqlite_settings: Settings) -> Iterator[Context]:
    context = Context.open(sqlite_settings)
    yield context
    context.close()


def opted_out_users(preview: dl.Preview) -> list[str]:
    excluded = preview.selection.excluded
    return excluded.loc[excluded["reason"] == "opted_out", "user_id"].tolist()


def test_r16_optout_of_0081_form_blocks_user(sctx):
    add_users(sctx, [mobile(1), mobile(2)])  # 090-1000-0001, 090-1000-0002
    assert people.optout_add(sctx, "0081-90-1000-0002").phone == e164(2)
    preview = dl.preview_bulk(sctx, ["hi"])
    assert (preview.recipients, opted_out_users(preview)) == (1, ["u2"])


def test_r16_optout_import_of_0081_forms_blocks_users(sctx, tmp_path):
    add_users(sctx, [mobile(1), mobile(2), mobile(3)])
    path = tmp_path / "optouts.csv"
    path.write_text("phone\n00819010000001\n0081 (0)90-1000-0003\n", encoding="utf-8")
    assert people.optout_import(sctx, path).added == 2
    assert sorted(people.load_optouts(sctx)) == [e164(1), e164(3)]
    assert opted_out_users(dl.preview_bulk(sctx, ["hi"])) == ["u1", "u3"]


def test_r16_optout_results_keep_their_json_shape(sctx, tmp_path):
    """The --json documents of optout add/import/remove, key for key (DESIGN.md)."""
    path = tmp_path / "optouts.csv"
    path.write_text("phone\n090-1000-0001\n090-1000-0001\n090-1000-0002\n", encoding="utf-8")
    imported = people.optout_import(sctx, path)
    assert imported.to_dict() == {"rows": 2, "added": 2, "optouts_total": 2}
    assert imported.describe() == "2 numbers added; 2 on the opt-out list"
    again = people.optout_add(sctx, mobile(1))
    assert again.to_dict() == {"phone": e164(1), "added": False, "optouts_total": 2}
    assert again.describe() == "already listed; 2 on the opt-out list"
    removed = people.optout_remove(sctx, mobile(2))
    assert list(removed.to_dict().items()) == [
        ("phone", e164(2)),
        ("removed", True),
        ("optouts_total", 1),
    ]


def test_r16_optout_blocks_a_users_file_holding_another_form(sctx, tmp_path):
    people.optout_add(sctx, "+81 90 1000 0002")
    users = tmp_path / "users.csv"
    users.write_text("user_id,phone\nu1,090-1000-0001\nu2,0081-90-1000-0002\n", encoding="utf-8")
    preview = dl.preview_bulk(sctx, ["hi"], users_files=[users])
    assert (preview.recipients, opted_out_users(preview)) == (1, ["u2"])


def test_r16_individual_send_to_another_form_of_an_opted_out_number_is_refused(sctx):
    accounts.add_tickets(sctx, 10)
    people.optout_add(sctx, "0081-90-1000-0002")
    for form in ("090-1000-0002", "０９０１００００００２", "+81 (0)90 1000 0002"):
        with pytest.raises(RuleError, match="R16"):
            dl.send_individual(sctx, form, ["hi"])
    assert dl.list_deliveries(sctx) == []


@pytest.mark.parametrize(
    "phone",
    [
        "03-1234-5678",  # a landline
        "0081-3-1234-5678",  # a landline, dialled from abroad
        "0120-123-456",  # toll-free
        "090-0123-4567",  # an unallocated mobile block
        "+1 212 555 0100",  # a foreign number
        "0044 20 7946 0958",  # a foreign number, read as a Japanese number of no type
    ],
)
def test_r16_optout_add_of_a_number_smsops_never_sends_to_is_refused(sctx, phone):
    with pytest.raises(InputError) as refused:
        people.optout_add(sctx, phone)
    message = str(refused.value)
    assert message.startswith("optout add: ") and "(not_mobile)" in message
    assert "\n" not in message and "5678" not in message.replace("****-5678", "")
    assert people.optout_count(sctx) == 0


def test_r16_optout_remove_of_a_landline_is_refused_as_not_a_mobile(sctx):
    with pytest.raises(InputError, match=r"^optout remove: .* not a Japanese mobile number"):
        people.optout_remove(sctx, "03-1234-5678")


def test_r16_optout_import_refuses_every_non_mobile_by_row_and_stores_nothing(sctx, tmp_path):
    path = tmp_path / "optouts.csv"
    path.write_text(
        "phone\n090-1000-0001\n03-1234-5678\n0044 20 7946 0958\n090-1234-ABCD\n",
        encoding="utf-8",
    )
    with pytest.raises(InputError) as refused:
        people.optout_import(sctx, path)
    problems = [(p.row, p.column, p.problem.rsplit(" ", 1)[-1]) for p in refused.value.problems]
    assert problems == [
        (2, "phone", "(not_mobile)"),
        (3, "phone", "(not_mobile)"),
        (4, "phone", "(malformed)"),
    ]
    assert people.optout_count(sctx) == 0  # all or nothing: not even row 1


_nsn = st.from_regex(r"\A[6-9]0[1-9][0-9]{7}\Z")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one store, reset per example
)
@given(st.data())
def test_r16_optout_in_any_form_blocks_every_form_of_that_number(sctx, data):
    nsn = data.draw(_nsn, label="number")
    listed, _ = data.draw(mobile_forms(nsn), label="opt-out as typed")
    in_table, _ = data.draw(mobile_forms(nsn), label="the user's phone cell")
    sent_to, _ = data.draw(mobile_forms(nsn), label="individual send to")
    other = "+819099999999" if nsn != "9099999999" else "+819088888888"
    add_users(sctx, [in_table, other])  # upserts u1 and u2 in place on every example

    assert people.optout_add(sctx, listed).phone == f"+81{nsn}"
    preview = dl.preview_bulk(sctx, ["hi"])
    assert (preview.recipients, opted_out_users(preview)) == (1, ["u1"])
    with pytest.raises(RuleError, match="R16"):
        dl.send_individual(sctx, sent_to, ["hi"])

    people.optout_remove(sctx, in_table)  # removal reads the forms alike too
    assert people.optout_count(sctx) == 0
