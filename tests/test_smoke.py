from conftest import Server


def test_quick_token_round_trip(server: Server) -> None:
    client = server.create_client("app_1", "app_2")
    response = server.token(client, scope="app_2")
    assert response.status_code == 201, response.text
    assert response.json()["scope"] == "app_2"
    events = [e["event"] for e in server.audit()]
    assert "token.issued" in events
