"""Agents: the agent definition (``dsl``), its tools, and the RAGFlow canvas import.

* :mod:`api.agent.dsl`: the pydantic models of an agent definition and
  :func:`~api.agent.dsl.from_ragflow_canvas`;
* :mod:`api.agent.tools`: the tools (retrieval, calculator, current_time,
  http_request, MCP) — small classes with a name, a JSON schema and a synchronous
  ``run(arguments, timeout)``;
* :mod:`api.agent.mcp_client`: a synchronous facade over the official ``mcp`` client.

The loop itself, ``run_agent()``, is a service: ``api/db/services/agent_service.py``.
Reference: ``docs/agents.md``.
"""
