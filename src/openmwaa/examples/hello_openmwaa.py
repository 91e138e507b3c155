"""The demo environment's DAG: two parallel tasks, then one that joins them."""

from __future__ import annotations

from datetime import datetime

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG


def say(word: str) -> str:
    print(f"hello from openmwaa: {word}")
    return word


with DAG(
    dag_id="hello_openmwaa",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["demo"],
) as dag:
    left = PythonOperator(task_id="left", python_callable=say, op_args=["left"])
    right = PythonOperator(task_id="right", python_callable=say, op_args=["right"])
    join = PythonOperator(task_id="join", python_callable=say, op_args=["joined"])
    [left, right] >> join
