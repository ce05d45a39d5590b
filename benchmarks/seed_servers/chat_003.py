# ruff: noqa
# Seed 003 (group chat, "chat.py"), as published; see ../README.md.
# Changed: the listening address comes from argv (was ("0.0.0.0", 5000)), and
# the blog's typographic quotes around '__main__' are plain quotes again.
import sys

from flask import Flask,request,render_template
from geventwebsocket.handler import WebSocketHandler
from gevent.pywsgi import WSGIServer
from geventwebsocket.websocket import WebSocket
import json

app = Flask(__name__)

user_dict = {}  # 空字典,用来存放用户名和发送消息


@app.route("/<username>")  # 参数为用户名
def index(username):
    # 获取请求的WebSocket对象
    user_socket = request.environ.get("wsgi.websocket")  # type:WebSocket
    if user_socket:
        # 设置键值对
        # {‘xiao‘: <geventwebsocket.websocket.WebSocket object at 0x0000020F6F6B8DB0>}
        user_dict[username] = user_socket
        print(user_dict)

    # 循环,接收消息
    while True:
        # 接收消息
        msg = user_socket.receive()
        print(msg)
        # 反序列化数据,因为前端发送的是json
        recv_msg = json.loads(msg)
        print(recv_msg)
        # 构造数据结构
        send_msg = {
            # 获取用户名
            "username":recv_msg.get("username"),
            # 获取消息
            "msg":recv_msg.get("msg")
        }
        # 遍历字典
        for i in user_dict.values():
            # 这里的i就是websocket对象
            # 判断websocket对象等于请求的websocket对象
            if i == user_socket:
                # 跳过循环
                continue
            # 发送数据,对数据做序列化
            i.send(json.dumps(send_msg))


@app.route("/ws")
def ws():
    return render_template("many_people.html")


if __name__ == '__main__':
    # 创建一个WebSocket服务器
    http_serv = WSGIServer((sys.argv[1], int(sys.argv[2])),app,handler_class=WebSocketHandler)
    # 开始监听HTTP请求
    http_serv.serve_forever()
    # app.run("0.0.0.0", 5000, debug=True)
