#!/usr/bin/env python3
"""Generate golden.json: chat-template renderings by Python's real jinja2.

jinja2 version: 3.1.6 (pip install jinja2==3.1.6 into a private venv:
    python3 -m venv /tmp/chat-venv && /tmp/chat-venv/bin/pip install jinja2==3.1.6
    /tmp/chat-venv/bin/python worker/chat/testdata/gen_golden.py)

The environment is configured the way transformers' apply_chat_template
configures it: ImmutableSandboxedEnvironment(trim_blocks=True,
lstrip_blocks=True) with the loopcontrols extension and a {% generation %}
tag, a tojson filter that is json.dumps(ensure_ascii=False, indent=None,
separators=None, sort_keys=False), and the globals raise_exception and
strftime_now. strftime_now reads a fixed clock (FIXED_NOW) so that the output
is reproducible; the Go test sets the same clock.

golden.json holds "var_sets" (named variable sets, key order kept, which
matters for tojson), "templates" (the public templates by name) and "cases":
{"name", "template" or "template_ref" (a templates name), "vars" (a var_sets
name), "public"} plus either "rendered" or {"error": true, "error_type",
"error_message"}.
"""

import json
import os
import random
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

FIXED_NOW = datetime(2024, 7, 5, 9, 3, 7)


class GenerationTag(jinja2.ext.Extension):
    """{% generation %}...{% endgeneration %}: renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return FIXED_NOW.strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


MSGS = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What's 2+2?  "},
]
MSGS_NOSYS = MSGS[1:]
MSGS_PARTS = [
    {"role": "user", "content": [{"type": "text", "text": "Look: "}, {"type": "image"}, {"type": "text", "text": "ok?"}]},
    {"role": "assistant", "content": "Nice."},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather for a city <now> & later",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City name, e.g. Zürich"}},
                "required": ["city"],
            },
        },
    }
]
MSGS_TOOLS = [
    {"role": "system", "content": "Use tools."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
    },
    {"role": "tool", "content": "22C, sunny", "tool_call_id": "call_1"},
    {"role": "tool", "content": "humidity 40%", "tool_call_id": "call_2"},
    {"role": "user", "content": "Thanks"},
]
D = {"b": 1, "a": 2, "c": [1, "two", None], "nested": {"x": True}}

BASE = {"messages": MSGS, "add_generation_prompt": True, "bos_token": "<s>", "eos_token": "</s>", "tools": None}

FEATURES = [
    ("text_trailing_newline", "Hello\n", {}),
    ("text_two_trailing_newlines", "Hello\n\n", {}),
    ("trim_blocks", "{% if true %}\nyes\n{% endif %}\nafter", {}),
    ("lstrip_blocks", "  {% if true %}\n  x\n  {% endif %}\nend", {}),
    ("lstrip_text_before", "a  {% if true %}b{% endif %}  c", {}),
    ("minus_controls", "a   {%- if true -%}   b   {%- endif -%}   c", {}),
    ("minus_vars", "x \n {{- 'y' -}} \n z", {}),
    ("plus_lstrip", "  {%+ if true %}k{% endif %}\n  {% if true +%}\nm{% endif %}", {}),
    ("comment_lstrip", "line1\n  {# comment #}\nline2\n{#- c -#}  \n line3", {}),
    ("var_not_lstripped", "  {{ 'v' }}\n  {{ 'w' }}", {}),
    ("crlf", "a\r\n{% if true %}\r\nb\r\n{% endif %}\r\n", {}),
    ("tabs_lstrip", "\t{% if true %}\t\n\tx{% endif %}", {}),
    ("loop_vars", "{% for m in messages %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.first }}/{{ loop.last }}/{{ loop.length }}/{{ loop.revindex }}/{{ loop.revindex0 }} {% endfor %}", {}),
    ("for_else", "{% for x in [] %}a{% else %}empty{% endfor %}{% for x in nope %}a{% else %}undef-empty{% endfor %}", {}),
    ("for_else_quirk", "{% for x in [1, 2] %}{% continue %}{% else %}all-continued{% endfor %}|{% for x in [1, 2] %}{% break %}{% else %}broke-first{% endfor %}|{% for x in [1, 2] %}{{ x }}{% if x == 2 %}{% break %}{% endif %}{% else %}not-shown{% endfor %}", {}),
    ("for_if", "{% for m in messages if m.role == 'user' %}{{ loop.index }}/{{ loop.length }}:{{ m.content }};{% endfor %}", {}),
    ("dict_items_method", "{% for k, v in d.items() %}{{ k }}={{ v }},{% endfor %}", {"d": D}),
    ("dict_items_filter", "{% for k, v in d | items %}{{ k }}:{{ v }} {% endfor %}{% for k in d %}{{ k }}{% endfor %}", {"d": D}),
    ("namespace", "{% set ns = namespace(found=false, n=0) %}{% for m in messages %}{% if m.role == 'user' %}{% set ns.found = true %}{% set ns.n = ns.n + 1 %}{% endif %}{% endfor %}{{ ns.found }} {{ ns.n }}", {}),
    ("loop_scoping", "{% set x = 1 %}{% for i in [1,2] %}{{ x }}{% set x = x + i %}{{ x }}|{% endfor %}{{ x }}", {}),
    ("if_scoping", "{% if true %}{% set y = 'in' %}{% endif %}{{ y }}", {}),
    ("set_block", "{% set s %}  hi {{ 1 + 1 }}\n{% endset %}[{{ s }}]{% set t | upper %}up{% endset %}{{ t }}", {}),
    ("macro", "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('a') }} {{ greet('b', punct='?') }} {{ greet() }}", {}),
    ("macro_recursive", "{% macro render(x) %}{% if x is mapping %}{% for k, v in x.items() %}{{ k }}:{{ render(v) }};{% endfor %}{% else %}{{ x }}{% endif %}{% endmacro %}{{ render(d) }}", {"d": D}),
    ("literals", "{{ 1 }} {{ 1.5 }} {{ -3 }} {{ true }} {{ True }} {{ none }} {{ None }} {{ 'a' 'b' }} {{ \"q'\" }} {{ [1, 'x', none] }} {{ {'k': 'v', 'n': 1} }} {{ (1, 2) }} {{ (1,) }} {{ 1e3 }} {{ 10/4 }} {{ 2.0 * 3 }} {{ 1_000 }}", {}),
    ("string_escapes", "{{ 'a\\tb\\\\c\\'d' }}|{{ \"x\\\"y\\nz\" }}|{{ '\\u00e9' }}", {}),
    ("undefined", "[{{ nope }}][{{ messages[0].nope }}][{{ messages[10] }}]{% if nope %}T{% else %}F{% endif %}{{ nope is defined }}{{ nope is not defined }}{{ messages[0].nope is defined }}", {}),
    ("attr_vs_item", "{{ messages[0]['role'] }} {{ messages[0].role }} {{ messages[-1].content }} {{ messages.0.role }}", {}),
    ("slicing", "{{ messages[1:] | length }} {{ messages[:1][0].role }} {{ 'abcdef'[::-1] }} {{ 'abcdef'[1:4] }} {{ [1,2,3,4,5][::2] }} {{ [1,2,3][-2:] }} {{ [1,2,3][5:] }} {{ 'héllo'[1] }}", {}),
    ("arithmetic", "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 7 / 2 }} {{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 'ab' * 3 }} {{ 'a' ~ 1 ~ none }} {{ [1] + [2] }} {{ 0.1 + 0.2 }} {{ -2 ** 2 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }} {{ true + 1 }}", {}),
    ("comparisons", "{{ 1 < 2 }} {{ 2 <= 1 }} {{ 'a' < 'b' }} {{ 1 == 1.0 }} {{ 'x' in 'xyz' }} {{ 'q' not in ['a'] }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'role' in messages[0] }} {{ [1,2] == [1,2] }} {{ none == none }} {{ nope == none }}", {}),
    ("logic", "{{ true and 'x' }} {{ false or 'y' }} {{ not none }} {{ none or [] }} {{ 0 and 1 }} {{ 'a' if false else 'b' }} {{ 'c' if true }}[{{ 'd' if false }}] {{ not 1 == 2 }} {{ 1 if 0 else 2 if 1 else 3 }}", {}),
    ("filters_string", "{{ '  hi  ' | trim }}|{{ 'xxhixx' | trim('x') }}|{{ 'hello world' | upper }}|{{ 'HeLLo' | lower }}|{{ 'hello WORLD' | capitalize }}|{{ \"hello world-foo (bar) it's\" | title }}|{{ 'a-b-c' | replace('-', '+') }}|{{ 'aaa' | replace('a', 'b', 2) }}|{{ none | lower }}|{{ 'ab' | center(6) }}|{{ 'one two  three' | wordcount }}", {}),
    ("filters_seq", "{{ [3,1,2] | length }} {{ 'héllo' | length }} {{ messages | count }} {{ [1,2,3] | first }} {{ [1,2,3] | last }} {{ ['a','b'] | join(', ') }} {{ messages | map(attribute='role') | join(',') }} {{ [1,2] | list }} {{ 'ab' | list }} {{ [3,1,2] | sort }} {{ [1,2,3] | reverse | list }} {{ [1,2,2,'A','a'] | unique | list }} {{ [1,2,3] | sum }} {{ [4,2,9] | max }} {{ [4,2,9] | min }} {{ ['b','A','c'] | sort }} {{ [1,2] | join }} {{ nope | length }} {{ messages | map(attribute='role') | unique | list }}", {}),
    ("filter_default", "{{ nope | default('dflt') }} {{ '' | default('e', true) }} {{ '' | default('e') }} {{ none | default('n') }} {{ nope | d('d') }} {{ none | default('n', boolean=true) }}", {}),
    ("filter_select", "{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(' / ') }}|{{ messages | rejectattr('role', 'equalto', 'user') | list | length }}|{{ [0, 1, '', 'a', none] | select | list }}|{{ [1,2,3,4] | select('odd') | list }}|{{ [1,2,3,4] | reject('even') | list }}|{{ messages | selectattr('role', '==', 'system') | list | length }}|{{ messages | selectattr('content') | list | length }}|{{ [1,5,3] | select('gt', 2) | list }}", {}),
    ("filter_map", "{{ ['a','b'] | map('upper') | join }} {{ messages | map(attribute='nope', default='-') | join }} {{ [' x ', 'y '] | map('trim') | list }}", {}),
    ("tojson", "{{ tools | tojson }}\n{{ tools[0] | tojson(indent=2) }}\n{{ {'b': 1, 'a': [true, none, 1.5, 'é\"\\n']} | tojson }}\n{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}\n{{ 'x<y>&\\'' | tojson }}\n{{ [] | tojson(indent=4) }}{{ {'k': {}, 'l': [1, [2]]} | tojson(indent=4) }}\n{{ 'é\\u2028😀' | tojson(ensure_ascii=true) }}\n{{ [1,2] | tojson(separators=(',', ':')) }}\n{{ 1.0 | tojson }} {{ 1e20 | tojson }} {{ {1: 'a', true: 'b'} | tojson }}", {"tools": TOOLS}),
    ("int_string", "{{ '42' | int + 1 }} {{ '4.7' | int }} {{ 'x' | int }} {{ 'x' | int(7) }} {{ 3.9 | int }} {{ 5 | string ~ 'x' }} {{ none | string }} {{ true | string }} {{ 3 | float }} {{ '2.5' | float }} {{ ' 12 ' | int }} {{ -3.9 | int }} {{ [1, 'a'] | string }}", {}),
    ("tests", "{{ 'a' is string }} {{ 1 is string }} {{ {} is mapping }} {{ [] is mapping }} {{ [] is iterable }} {{ 'a' is iterable }} {{ 1 is iterable }} {{ [] is sequence }} {{ 1 is number }} {{ 1.5 is number }} {{ 'a' is number }} {{ true is boolean }} {{ 1 is boolean }} {{ true is true }} {{ false is false }} {{ 1 is true }} {{ none is none }} {{ 0 is none }} {{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 'a' is equalto 'a' }} {{ 2 is eq 2 }} {{ nope is undefined }} {{ 1 is integer }} {{ 1.0 is float }} {{ 'x' is in 'xy' }} {{ 2 is gt 1 }} {{ 'abc' is lower }} {{ 'ABC' is upper }} {{ none is not none }} {{ true is sameas true }}", {}),
    ("string_methods", "{{ '  a b  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '  a'.lstrip() }}|{{ 'a  '.rstrip() }}|{{ 'hello'.startswith('he') }}|{{ 'hello'.endswith('lo') }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'AbC'.lower() }}|{{ 'abc'.upper() }}|{{ 'aXbX'.replace('X', '-') }}|{{ \"they're bill's 1st\".title() }}|{{ 'hello'.startswith(('x', 'h')) }}|{{ 'a</think>b'.split('</think>')[-1] }}|{{ 'hello'.capitalize() }}|{{ 'a\\nb\\n'.lstrip('\\n') }}|{{ 'abcabc'.count('b') }}|{{ 'abc'.find('c') }}|{{ '-'.join(['a', 'b']) }}", {}),
    ("dict_methods", "{{ d.get('a') }} {{ d.get('zz') }} {{ d.get('zz', 'dd') }} {{ d.keys() | list }} {{ d.values() | list }} {{ d.items() | list }} {{ d['b'] }} {{ d.c[1] }} {{ d.nested.x }} {{ d | length }}", {"d": D}),
    ("loop_controls", "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %}", {}),
    ("range", "{{ range(3) | list }} {{ range(1, 7, 2) | list }} {{ range(5, 0, -2) | list }} {{ range(0) | list }}", {}),
    ("loop_prev_next_cycle", "{% for x in [1,2,3] %}{{ loop.previtem | default('-') }}{{ loop.nextitem | default('-') }}{{ loop.cycle('a','b') }} {% endfor %}", {}),
    ("nested_loops", "{% for a in [1,2] %}{% for b in 'xy' %}{{ loop.index }}{{ a }}{{ b }} {% endfor %}{{ loop.index }};{% endfor %}", {}),
    ("ws_minus_indented", """{%- for message in messages %}
    {%- if message.role == 'user' %}
        {{- 'U: ' + message.content + '\\n' }}
    {%- else %}
        {{- 'O: ' + message.content + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- 'A:' }}
{%- endif %}
""", {}),
    ("ws_plain_indented", """{% for message in messages %}
  {% if loop.first %}
  First: {{ message.role }}
  {% endif %}
  - {{ message.content }}
{% endfor %}
Done
""", {}),
    ("ws_mixed", "<{% for m in messages %} {{ m.role }} {% endfor %}>\n{% if true -%}\n  a\n{%- endif %}\n\n  {% if false %}x{% else %}\n  y\n  {% endif %}\n", {}),
    ("strftime_now", "{{ strftime_now('%d %b %Y') }} {{ strftime_now('%Y-%m-%d %H:%M:%S') }} {{ strftime_now('%-d %B, %A %a %j %I%p %y') }}", {}),
    ("raw", "{% raw %}{{ not evaluated }} {% if %}{% endraw %}\n  {% raw %}x{% endraw %}", {}),
    ("content_parts", "{% for m in messages %}{% if m.content is string %}{{ m.content }}{% else %}{% for p in m.content %}{% if p.type == 'text' %}{{ p.text }}{% elif p.type == 'image' %}<img>{% endif %}{% endfor %}{% endif %}|{% endfor %}", {"messages": MSGS_PARTS}),
    ("generation_tag", "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}", {}),
    ("is_not_none", "{% for m in messages %}{{ (m.content if m.content is not none else '') | length }},{% endfor %}", {"messages": MSGS_TOOLS}),
    ("dict_literal_in", "{% set d2 = {'a': 1, 'b': [1, 2]} %}{{ 'a' in d2 }} {{ d2.a }} {{ d2['b'][1] }} {{ 'z' in d2 }}", {}),
    ("filter_block", "{% filter upper %}abc {{ 'd' }}{% endfilter %}", {}),
    ("repr_strings", "{{ ['it\\'s', \"q\\\"\", 'a\\nb', 'both\\'\"'] }}", {}),
    ("repr_messages", "{{ messages[0] }} {{ messages[:2] }}", {}),
    ("float_format", "{{ 1e16 }} {{ 1e15 }} {{ 0.0001 }} {{ 0.00001 }} {{ 1.5e-7 }} {{ 123456789.123 }} {{ 3.0 }} {{ -0.0 }} {{ 2 ** -1 }} {{ 1/3 }} {{ 2.5 | round }} {{ 3.14159 | round(2) }}", {}),
    ("indent_filter", "{{ 'a\\nb\\n\\nc' | indent(2) }}|{{ 'a\\nb' | indent(4, true) }}|{{ 'a\\n\\nb' | indent(2, blank=true) }}", {}),
    ("tool_calls_iter", "{% for m in messages %}{% if m.tool_calls %}{% for tc in m.tool_calls %}{{ tc.function.name }}({{ tc.function.arguments | tojson }}){% endfor %}{% endif %}{% endfor %}", {"messages": MSGS_TOOLS}),
    ("reverse_index", "{% for message in messages[::-1] %}{% set index = (messages|length - 1) - loop.index0 %}{{ index }}{{ message.role[0] }} {% endfor %}", {}),
    ("multiline_comment", "a\n{# line one\n   line two #}\nb\n  {#- x #}c", {}),
    ("kwargs_extra", "{{ custom }} {{ enable_thinking is defined }} {{ tools is none }} {{ tools is defined }}", {"custom": "extra!"}),
    ("bos_eos", "{{ bos_token }}x{{ eos_token }}{{ add_generation_prompt }}", {}),
    ("dict_global", "{% set d3 = dict(a=1, b='x') %}{{ d3 }} {{ d3.b }}", {}),
    ("not_precedence", "{{ not true and false }} {{ not (true and false) }} {{ - 3 | abs }} {{ not 'a' in 'abc' }}", {}),
    ("percent_format", "{{ '%s-%s' % ('a', 1) }} {{ '%d%%' % 5 }} {{ '%s' | format('z') }}", {}),
    ("whitespace_in_tags", "{%if true%}a{%endif%}{{'b'}}{%- if true-%} c {%-endif-%}", {}),
    ("set_multiple", "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% for x, y in [[1, 2], [3, 4]] %}{{ x + y }}{% endfor %}", {}),
    ("macro_scope", "{% set g = 'G' %}{% macro m() %}{{ g }}{{ messages | length }}{% endmacro %}{{ m() }}", {}),
    ("str_format", "{{ '{} and {}'.format('a', 1) }}|{{ '{1}{0}'.format('x', 'y') }}|{{ '{name}!'.format(name='n') }}|{{ '{{literal}}'.format() }}", {}),
    ("repr_unicode", "{{ ['caf\u00e9', '\u00a0', '\u200b', 'tab\tx', '\x7f'] }}", {}),
    ("overflow_edges", "{{ [1,2,3][2::9223372036854775807] }} {{ [1,2,3][::-9223372036854775807] }} {{ (-1) ** 1000000000000000001 }} {{ 2 ** 62 }} {{ ' a b '.split(none, 9223372036854775807) }} {{ ' a  b c '.split(none, 1) }} {{ ' a  b c '.rsplit(none, 1) }} {{ 'a,b,c'.rsplit(',', 1) }} {{ 'a,b,c'.split(',', 9223372036854775807) }}", {}),
    ("call_block", "{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}inner {{ 1 + 1 }}{% endcall %}|{% macro row(x) %}[{{ caller(x * 2) }}]{% endmacro %}{% call(v) row(3) %}v={{ v }}{% endcall %}", {}),
    ("dictsort_filter", "{{ d | dictsort }} {{ {'b': 2, 'A': 1, 'c': 0} | dictsort(by='value') }} {{ {'b': 2, 'A': 1} | dictsort(reverse=true) }}", {"d": {"b": 1, "a": 2}}),
    ("documents_none", "{{ documents is none }} {{ documents is defined }}", {"documents": None}),
    ("trim_strip_unicode", "{{ '\\u00a0x\\u3000' | trim }}|{{ 'x\\n' | trim }}", {}),
    # errors
    ("err_raise", "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}", {}),
    ("err_unknown_filter", "{{ 1 | nosuchfilter }}", {}),
    ("err_syntax_if", "{% if %}x{% endif %}", {}),
    ("err_unclosed_for", "{% for x in y %}", {}),
    ("err_bad_expr", "{{ 1 + }}", {}),
    ("err_undefined_attr", "{{ nope.x }}", {}),
    ("err_str_plus_int", "{{ 'a' + 1 }}", {}),
    ("err_none_plus_str", "{{ none + 'a' }}", {}),
    ("err_unclosed_var", "{{ x ", {}),
    ("err_unknown_tag", "{% include 'x' %}", {}),
    ("err_unclosed_comment", "{# x", {}),
    ("err_div_zero", "{{ 1 / 0 }}", {}),
    ("err_tojson_undefined", "{{ nope | tojson }}", {}),
    ("err_endfor_mismatch", "{% if true %}{% endfor %}", {}),
    ("err_set_attr_non_ns", "{% set d = {} %}{% set d.x = 1 %}", {}),
    ("err_compare_types", "{{ 1 < 'a' }}", {}),
]

CHATML = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)

PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)

QWEN2 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

LLAMA31 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

QWEN3 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

DEEPSEEK_R1 = """{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] | tojson + '\\n' + '```' + '<｜tool▁call▁end｜>'}}{%- set ns.is_first = true -%}{%- else %}{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] | tojson + '\\n' + '```' + '<｜tool▁call▁end｜>'}}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- set ns.is_output_first = false %}{%- else %}{{'\\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"""

HERMES_MACROS = """{%- macro json_to_python_type(json_spec) %}
{%- set basic_type_map = {"string": "str", "number": "float", "integer": "int", "boolean": "bool"} %}
{%- if basic_type_map[json_spec.type] is defined %}
    {{- basic_type_map[json_spec.type] }}
{%- elif json_spec.type == "array" %}
    {{- "list[" +  json_to_python_type(json_spec["items"]) + "]" }}
{%- elif json_spec.type == "object" %}
    {%- if json_spec.additionalProperties is defined %}
        {{- "dict[str, " + json_to_python_type(json_spec.additionalProperties) + ']' }}
    {%- else %}
        {{- "dict" }}
    {%- endif %}
{%- elif json_spec.type is iterable %}
    {{- "Union[" }}
    {%- for t in json_spec.type %}
        {{- json_to_python_type({"type": t}) }}
        {%- if not loop.last %}
            {{- "," }}
        {%- endif %}
    {%- endfor %}
    {{- "]" }}
{%- else %}
    {{- "Any" }}
{%- endif %}
{%- endmacro %}
{{- bos_token }}
{{- "<|im_start|>system\\nYou are a function calling AI model. Here are the available tools: <tools> " }}
{%- for tool in tools %}
    {%- if tool.function is defined %}
        {%- set tool = tool.function %}
    {%- endif %}
    {{- '{"type": "function", "function": ' }}
    {{- '{"name": "' + tool.name + '", ' }}
    {{- '"description": "' + tool.name + '(' }}
    {%- for param_name, param_fields in tool.parameters.properties|items %}
        {{- param_name + ": " + json_to_python_type(param_fields) }}
        {%- if not loop.last %}
            {{- ", " }}
        {%- endif %}
    {%- endfor %}
    {{- ")" }}
    {%- if tool.return is defined %}
        {{- " -> " + json_to_python_type(tool.return) }}
    {%- endif %}
    {{- " - " + tool.description + "\\n\\n" }}
    {{- '", "parameters": ' }}
    {{- tool.parameters|tojson }}
    {{- "}" }}
{%- endfor %}
{{- " </tools><|im_end|>\\n" }}
{%- for message in messages %}
    {%- if message.role == "user" or message.role == "system" or (message.role == "assistant" and message.tool_calls is not defined) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- for tool_call in message.tool_calls %}
            {{- '\\n<tool_call>\\n' }}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '{' }}
            {{- '"name": "' }}
            {{- tool_call.name }}
            {{- '"' }}
            {%- if tool_call.arguments is defined %}
                {{- ', ' }}
                {{- '"arguments": ' }}
                {{- tool_call.arguments|tojson }}
            {%- endif %}
            {{- '}' }}
            {{- '\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.previtem and loop.previtem.role != "tool" %}
            {{- '<|im_start|>tool\\n' }}
        {%- endif %}
        {{- '<tool_response>\\n' }}
        {{- message.content }}
        {%- if not loop.last %}
            {{- '\\n</tool_response>\\n' }}
        {%- else %}
            {{- '\\n</tool_response>' }}
        {%- endif %}
        {%- if not loop.last and loop.nextitem.role != "tool" %}
            {{- '<|im_end|>' }}
        {%- elif loop.last %}
            {{- '<|im_end|>' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

PUBLIC = [("chatml", CHATML), ("llama2", LLAMA2), ("mistral", MISTRAL), ("gemma", GEMMA), ("phi3", PHI3), ("qwen2", QWEN2), ("llama31", LLAMA31), ("qwen3", QWEN3), ("gemma3", GEMMA3), ("deepseek_r1", DEEPSEEK_R1), ("hermes_macros", HERMES_MACROS)]
MSGS_THINK = [
    {"role": "user", "content": "Solve 1+1"},
    {"role": "assistant", "content": "<think>\nsimple\n</think>\n\nIt is 2."},
    {"role": "user", "content": "And 2+2?"},
]
TOOLS_TYPES = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search things",
            "parameters": {
                "type": "object",
                "properties": {
                    "q": {"type": "string"},
                    "limit": {"type": "integer"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "opts": {"type": "object", "additionalProperties": {"type": "number"}},
                    "mode": {"type": ["string", "null"]},
                },
            },
            "return": {"type": "boolean"},
        },
    }
]
MESSAGE_SETS = [
    ("basic", MSGS, None, {}),
    ("nosys", MSGS_NOSYS, None, {}),
    ("tools", MSGS_TOOLS, TOOLS, {}),
    ("single", [MSGS[1]], None, {}),
    ("parts", MSGS_PARTS, None, {}),
    ("think", MSGS_THINK, None, {"enable_thinking": False}),
    ("tooltypes", MSGS_TOOLS[1:], TOOLS_TYPES, {"tools_in_user_message": False}),
]


def random_whitespace_templates(n, seed=1234):
    """Random mixes of text, tags, whitespace and -/+ modifiers, to pin the
    trim_blocks/lstrip_blocks rules down beyond the hand-written cases."""
    rng = random.Random(seed)
    texts = ["", " ", "  ", "\t", "\n", " \n", "\n  ", "\n\n", "a", " b ", "c\n", "\n d", "\t\n\t"]
    out = []
    for _ in range(n):
        parts = []
        depth = 0
        for _ in range(rng.randint(3, 12)):
            parts.append(rng.choice(texts))
            lm = rng.choice(["", "", "-", "+"])
            rm = rng.choice(["", "", "-", "+"])
            kind = rng.random()
            if kind < 0.25:
                parts.append("{{" + lm.replace("+", "") + " 'v' " + rm.replace("+", "") + "}}")
            elif kind < 0.4:
                parts.append("{#" + lm + " c " + rm + "#}")
            elif kind < 0.7 and depth < 3:
                parts.append("{%" + lm + " if true " + rm + "%}")
                depth += 1
            elif depth > 0:
                parts.append("{%" + lm + " endif " + rm + "%}")
                depth -= 1
            else:
                parts.append("{%" + lm + " set x = 1 " + rm + "%}")
        parts.append(rng.choice(texts))
        parts.extend(["{% endif %}"] * depth)
        out.append("".join(parts))
    return out


def random_statement_templates(n, seed=4321):
    """Random nests of for (with filters, else, break, continue), if/else,
    set and namespace updates, with whitespace control, to pin down scoping
    and loop semantics."""
    rng = random.Random(seed)
    exprs = ["m.role", "m.content", "loop.index", "loop.first", "loop.last", "x", "ns.n", "i", "loop.length", "loop.revindex0", "messages|length"]
    conds = ["loop.first", "loop.last", "m.role == 'user'", "i > 1", "ns.n > 2", "x is defined", "not loop.first", "i % 2 == 0"]

    def block(d):
        out = []
        for _ in range(rng.randint(1, 4)):
            r = rng.random()
            ws = rng.choice(["", " ", "\n", "\n  "])
            lm = rng.choice(["", "-"])
            rm = rng.choice(["", "-"])
            if r < 0.3:
                out.append(ws + "{{" + lm + " " + rng.choice(exprs) + " " + rm + "}}")
            elif r < 0.45 and d < 3:
                out.append(ws + "{%" + lm + " if " + rng.choice(conds) + " " + rm + "%}" + block(d + 1) + ws + "{%" + lm + " else " + rm + "%}" + block(d + 1) + "{% endif %}")
            elif r < 0.6 and d < 2:
                it = rng.choice(["messages", "range(4)", "messages[1:]", "messages[::-1]", "[]"])
                var = "m" if "messages" in it else "i"
                filt = rng.choice(["", " if " + var + " != 2"]) if var == "i" else rng.choice(["", " if m.role != 'system'"])
                out.append(ws + "{%" + lm + " for " + var + " in " + it + filt + " " + rm + "%}" + block(d + 1) + rng.choice(["", "{% else %}E"]) + "{% endfor %}")
            elif r < 0.7:
                out.append(ws + "{% set ns.n = ns.n + 1 %}")
            elif r < 0.8:
                out.append(ws + "{% set x = " + rng.choice(exprs) + " %}")
            elif r < 0.88 and d > 0:
                out.append(ws + "{% if " + rng.choice(conds) + " %}{% " + rng.choice(["break", "continue"]) + " %}{% endif %}")
            else:
                out.append(ws + "t" + str(rng.randint(0, 9)))
        return "".join(out)

    return ["{% set ns = namespace(n=0) %}{% for i in range(3) %}" + block(1) + "{% endfor %}|{{ ns.n }}|{{ x }}" for _ in range(n)]


def render(env, name, template, variables, public=False):
    case = {"name": name, "template": template, "vars": variables, "public": public}
    try:
        case["rendered"] = env.from_string(template).render(**variables)
    except Exception as e:  # noqa: BLE001 - any failure is an expected error case
        case["error"] = True
        case["error_type"] = type(e).__name__
        case["error_message"] = str(e)
    return case


def main():
    env = make_env()
    cases = []
    for name, template, extra in FEATURES:
        cases.append(render(env, name, template, {**BASE, **extra}))
    for i, template in enumerate(random_whitespace_templates(80)):
        cases.append(render(env, f"ws_random_{i}", template, BASE))
    for i, template in enumerate(random_statement_templates(60)):
        cases.append(render(env, f"stmt_random_{i}", template, BASE))
    for tname, template in PUBLIC:
        for mname, msgs, tools, extra in MESSAGE_SETS:
            for agp in (True, False):
                variables = {**BASE, "messages": msgs, "tools": tools, "add_generation_prompt": agp, **extra}
                cases.append(render(env, f"{tname}/{mname}/agp={agp}", template, variables, public=True))
    # Variable sets are stored once and referenced by name, one case a line.
    var_sets, names = {}, {}
    for c in cases:
        key = json.dumps(c["vars"], ensure_ascii=False)
        if key not in names:
            names[key] = f"v{len(names)}"
            var_sets[names[key]] = c["vars"]
        c["vars"] = names[key]
    # Shared templates (the public ones) are stored once too.
    templates = {}
    for c in cases:
        if c["public"]:
            tname = c["name"].split("/")[0]
            templates[tname] = c.pop("template")
            c["template_ref"] = tname
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden.json")
    with open(out, "w", encoding="utf-8") as f:
        f.write('{"jinja2_version": %s, "fixed_now": %s,\n' % (json.dumps(jinja2.__version__), json.dumps(FIXED_NOW.isoformat())))
        f.write('"var_sets": {\n' + ",\n".join(json.dumps(k) + ": " + json.dumps(v, ensure_ascii=False) for k, v in var_sets.items()) + "\n},\n")
        f.write('"templates": {\n' + ",\n".join(json.dumps(k) + ": " + json.dumps(v, ensure_ascii=False) for k, v in templates.items()) + "\n},\n")
        f.write('"cases": [\n' + ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases) + "\n]}\n")
    errors = sum(1 for c in cases if c.get("error"))
    print(f"wrote {len(cases)} cases ({errors} errors) to {out}")


if __name__ == "__main__":
    main()
